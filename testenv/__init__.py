"""The emulated cluster of multus-ipmgr's tests, demo and benchmarks: see awsenv.py."""
