//! Table-driven and golden tests of the pod mutation.
