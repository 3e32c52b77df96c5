"""I/O: training executors, serving backends, artifact store, Prometheus queries, kube helpers."""
