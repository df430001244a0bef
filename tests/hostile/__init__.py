"""The hostile-input corpus: bundles, appspecs and scripts built to attack cdsim, each refused safely."""
