"""Device, precision and DataLoader defaults shared by the extract and distill stages."""

from __future__ import annotations

import contextlib
import os
import platform
import re
from contextvars import ContextVar
from typing import TYPE_CHECKING, Iterator

import torch

from featcache.errors import ConfigError, check_at_least

if TYPE_CHECKING:
    import threading

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device name (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU."""
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        if device.type == "cpu" and precision == "fp16":
            raise ConfigError("--precision fp16 is not supported on the CPU; use fp32 or bf16")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    if precision == "fp32":
        yield
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_workers(value: int | None) -> None:
    """--workers: >= 0 and at most max(32, 4 x cores): each worker is a process with its own loader, and a typo
    (--workers 100000) would fork until the machine stops answering."""
    if value is None:
        return
    check_at_least("--workers", value, 0)
    most = max(32, 4 * cpu_cores())
    if value > most:
        raise ConfigError(f"--workers {value}: at most {most} on this machine (4 x its {cpu_cores()} cores, or 32); "
                          "each worker is a process with its own copy of the loader", flag="--workers")


def default_workers(device: torch.device | str | None = None) -> int:
    """DataLoader worker processes when --workers is not given.

    On a GPU the host decodes while the device computes: min(8, cores). On the CPU the workers take their cores
    from the training threads: on 2 cores, 2 workers + 2 torch threads trained at 0.68 of a bare loop and 0 workers
    at 0.89 (docs/benchmarks.md), so none below 4 cores, then a quarter of the cores (at most 8).
    """
    n = cpu_cores()
    if device is not None and torch.device(device).type == "cpu":
        return 0 if n < 4 else min(8, n // 4)
    return max(0, min(8, n))


def use_cpu_threads(device: torch.device, workers: int) -> int:
    """On the CPU, give torch the cores the DataLoader workers leave, so the two never oversubscribe; an explicit
    OMP_NUM_THREADS (or FEATCACHE_THREADS) wins. Returns the thread count in use."""
    if device.type == "cpu":
        # Denormal floats (|x| < 1e-38, e.g. in a stalled student's tiny gradients and Adam states) are up to 100x
        # slower on x86 CPUs; flushing them to zero changes no result that matters and keeps every step at speed.
        torch.set_flush_denormal(True)
        if _PINNED.get() is not None:  # train-teacher --threads: part of what the teacher is, so it wins
            return torch.get_num_threads()
        explicit = os.environ.get("FEATCACHE_THREADS")
        if explicit is not None and not (explicit.isdigit() and int(explicit) > 0):
            raise ConfigError(f"FEATCACHE_THREADS={explicit!r}: expected a whole number of threads >= 1 (or unset it)")
        explicit = explicit or os.environ.get("OMP_NUM_THREADS")
        threads = (int(explicit) if explicit and explicit.isdigit() and int(explicit) > 0
                   else max(1, cpu_cores() - workers))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return torch.get_num_threads()


_PINNED: ContextVar[int | None] = ContextVar("featcache_pinned_threads", default=None)


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """Run the block on exactly ``threads`` torch threads, whatever use_cpu_threads would choose (None: no pin)."""
    if threads is None:
        yield
        return
    before, token = torch.get_num_threads(), _PINNED.set(threads)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        _PINNED.reset(token)
        torch.set_num_threads(before)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def bits_record(device: torch.device) -> dict[str, object]:
    """What changes a training's bits besides its flags, data and seed: the thread count in use, the library
    versions, the device and the determinism switches (reductions run in another order on another of these)."""
    import torchvision

    return {"threads": torch.get_num_threads(), "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__),
            "device": device_name(device), "cpu": cpu_model(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}


@contextlib.contextmanager
def one_cpu_thread() -> Iterator[None]:
    """Run the block's torch ops on one thread. For ops on a batch of a few MB (normalising images, dequantising
    rows) a second thread gains nothing, and on a loaded 2-core box its barrier costs 10-70x the op itself: the
    int8 rows of one 128 x 2048 batch dequantised in 57 ms on 2 threads, 0.77 ms on one (same bits)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


class PeakRSS:
    """Peak resident set size of this process while the block runs, sampled every 5 ms from /proc (CPU runs have
    no allocator statistics; ru_maxrss never goes down, so it cannot tell settings of one process apart)."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak: int | None = None
        self._stop: threading.Event | None = None

    @staticmethod
    def now() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self) -> "PeakRSS":
        import threading

        self.peak = self.now()
        if self.peak is None:
            return self
        self._stop = stop = threading.Event()

        def sample() -> None:
            while not stop.wait(self.interval):
                self.peak = max(self.peak or 0, self.now() or 0)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak or 0, self.now() or 0)


# -- memory budgets ----------------------------------------------------------------------------------------------


def parse_bytes(text: str | int | None, flag: str = "--cache-ram") -> int | None:
    """'8G', '512M', '1.5GB', 1234 -> bytes; None/'auto' -> None."""
    if text is None or text == "auto":
        return None
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([kKmMgGtT]?)[iI]?[bB]?\s*", str(text))
    if not m:
        raise ConfigError(f"{flag} {text!r}: expected a size such as 8G, 512M or auto", flag=flag)
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def available_ram() -> int:
    """Bytes of memory available now (Linux MemAvailable), else a conservative 4 GiB."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def default_ram_budget() -> int:
    return available_ram() // 2
