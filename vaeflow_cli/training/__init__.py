"""Training: the training loop of a phase (``loop``), one optimisation step with its precision and
DDP wrapping (``step``), run admission, state and lineage, a run's config and the model of a
checkpoint (``runconfig``), experiment loggers, Ctrl-C handling, and the Table 4 timing. The phase
table, threads, devices, torchrun helpers and run directories are the ground floor's
(``vaeflow_cli.runtime``)."""
