//! Tests of the config file loader.
use super::*;
