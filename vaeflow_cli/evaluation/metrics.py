"""The metrics ``vaeflow evaluate`` scores, by name: their one home, free of torch and numpy, so the
command line lists them in its --help without importing ``vaeflow_cli.evaluation.evaluate`` (which computes
them and re-exports ``METRICS``)."""

METRICS = ("bpd", "iwae", "fid", "digit_fd", "cifar_fd", "simclr_fd")
