"""Internal helpers shared by the stages (files, locks, hashing, safe loading, progress, runtime, torchrun).

Not part of the public API: `import featcache as fc` and `featcache.losses` are."""
