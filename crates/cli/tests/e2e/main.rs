//! End-to-end tests: the real `yun` binary, a daemon per test in a temporary YUN_HOME.

mod bad_input;
mod dashboard;
mod dataplane;
mod example;
mod gateway;
mod jobs;
mod lifecycle;
mod metrics;
mod resilience;
mod support;
mod traces;
