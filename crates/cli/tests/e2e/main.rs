//! End-to-end tests: the real `yun` binary, a daemon per test in a temporary YUN_HOME.

mod bad_input;
mod dataplane;
mod example;
mod gateway;
mod jobs;
mod lifecycle;
mod metrics;
mod resilience;
mod support;
mod traces;
