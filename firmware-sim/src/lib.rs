//! nandbox-sim: the simulated NAND array and the firmware runner around nandbox-core.
#![forbid(unsafe_code)]
