//! QStore: one file serving a model at high precision and at INT8. (Being written.)
