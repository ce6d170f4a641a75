//! End-to-end test harness for handover.
