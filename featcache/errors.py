"""User-facing errors.

Every exception a user can cause and fix derives from FeatcacheError. Its message is one line that names the
file, flag or field at fault and says what to do; the CLI prints it without a traceback (set FEATCACHE_DEBUG=1
to see one). Anything else reaching the CLI is a bug and keeps its traceback.
"""


class FeatcacheError(Exception):
    """Base class of errors caused by user input or the environment, with an actionable one-line message."""

    def __init__(self, *args: object, flag: str | None = None) -> None:
        # ``flag``: the option at fault as the CLI spells it (--cache-ram). The message is worded for the CLI; other
        # front ends (recipes, featcache.config.flags) re-word it in their own terms with ``reworded``.
        self.flag = flag
        # A DataLoader worker's exception is re-raised in the main process as ``type(exc)(text)``, where ``text``
        # is the worker's whole traceback; keep only the original one-line message.
        if len(args) == 1 and isinstance(args[0], str) and "\nOriginal Traceback" in args[0]:
            last = args[0].rstrip().splitlines()[-1]
            head, sep, message = last.partition(": ")
            args = (message if sep and head.startswith("featcache.") else last,)
        super().__init__(*args)


    def reworded(self, name: str) -> "FeatcacheError":
        """The same error naming the option as ``name`` (e.g. a recipe's ``[[distill]] options.cache_ram``)."""
        if not self.flag:
            return self
        new = type(self).__new__(type(self))
        Exception.__init__(new, str(self).replace(self.flag, name))
        new.flag = None
        return new


class ConfigError(FeatcacheError):
    """A flag or config value is invalid or inconsistent with another."""


class DatasetError(FeatcacheError):
    """A dataset is missing, incomplete or malformed on disk."""


class ModelError(FeatcacheError):
    """An unknown model name or an unusable model configuration."""


class WeightsError(ModelError):
    """Weights cannot be found, read or loaded into the model."""


class CacheError(FeatcacheError):
    """A feature cache is missing, incomplete or corrupt."""


class CacheVersionError(CacheError):
    """A cache was written by a newer featcache (its format_version is higher than this one reads)."""


class CacheIdentityError(CacheError):
    """A cache is not the cache its name says: its directory's name, its manifest's key and the identity it records
    disagree (a cache copied under another key, an edited manifest). Every reader refuses it."""


class CacheMismatchError(CacheError):
    """A cache does not describe the dataset/transform it is being joined with."""


class StorageError(FeatcacheError):
    """A directory featcache must write is read-only, not permitted, or on a full disk."""


class RemoteError(StorageError):
    """A remote store (a URL among the stores) could not be read: the message names the URL and what failed."""


class LockedError(FeatcacheError):
    """Another process holds a directory's lock. Carries ``what``, ``directory`` and ``holder`` (a pid) so that each
    caller can say what to do in its own terms (``hint``)."""

    def __init__(self, what: str, directory: object, holder: str, hint: str = "") -> None:
        self.what, self.directory, self.holder, self.hint = what, directory, holder, hint
        name = getattr(directory, "name", directory) if what == "cache" else directory
        verb = "is being written by" if what == "cache" else "is in use by"
        super().__init__(f"{what} {name} {verb} another featcache process (pid {holder})"
                         + (f"; {hint}" if hint else ""))

    def with_hint(self, hint: str) -> "LockedError":
        return type(self)(self.what, self.directory, self.holder, hint)


class CacheLockedError(LockedError, CacheError):
    """Another process holds the cache's write lock."""


class RunLockedError(LockedError):
    """Another process is training in the run directory."""


def check_choice(flag: str, value: object, choices: "tuple[str, ...] | list[str]") -> None:
    """Refuse a value outside ``choices``: ``--flag 'x': choose one of a, b, c``."""
    if value not in choices:
        raise ConfigError(f"{flag} {value!r}: choose one of {', '.join(choices)}", flag=flag)


SEED_MAX = 2**32 - 1  # numpy's legacy seeding (and every worker's) takes 32 bits


def check_seed(flag: str, value: int) -> None:
    """Refuse a seed numpy cannot take (it raises deep inside data loading otherwise)."""
    if not 0 <= value <= SEED_MAX:
        raise ConfigError(f"{flag} must lie in [0, {SEED_MAX}], got {value}", flag=flag)


def check_at_least(flag: str, value: float, low: float) -> None:
    """Refuse a number below ``low``: ``--flag must be >= low, got value``."""
    if value < low:
        raise ConfigError(f"{flag} must be >= {low}, got {value}", flag=flag)
