//! Codecs for data the device stores: entropy coding and the model-weight codecs.

pub mod qstore;
