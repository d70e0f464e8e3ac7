//! One integration-test binary (as ripgrep): each topic is a module.

mod util;

mod api;
mod backend;
mod cli;
mod gmm;
mod hostile;
mod kmeans;
mod report;
mod segments;
mod sklearn;
