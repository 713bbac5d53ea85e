//! A durable queue of failed requests on `sled`, and the layer that fills it.
