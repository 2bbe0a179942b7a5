"""`featcache bench ...`: each bench times the real command path next to its limit in the same process."""
