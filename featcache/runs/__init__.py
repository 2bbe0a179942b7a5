"""Run directories: their files (rundir), listing (`runs ls`), reports, and loggers."""
