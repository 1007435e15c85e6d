"""Training: the phase table (``phases``), the training loop of a phase (``loop``), one optimisation
step with its precision, DDP and thread settings (``step``, ``threads``), run directories and
checkpoints (``runs``), experiment loggers, and the Table 4 timing."""
