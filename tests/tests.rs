//! One integration-test binary (as ripgrep): each topic is a module.

mod util;

mod api;
mod backend;
mod catalogue;
mod choose_k;
mod cli;
mod distributed;
mod events;
mod faults;
mod gmm;
mod hostile;
mod kernels;
mod kmeans;
pub mod report;
mod resume;
mod segments;
mod sklearn;
mod stream;
mod update;
