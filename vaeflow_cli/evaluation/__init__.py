"""Evaluation: held-out ELBO and IWAE bounds in bits/dim (``bounds``), the histogram and PNG
yardsticks, FID and the classifier Frechet distances (digit_fd, cifar_fd), the ``evaluate``
command's library function and the training plots."""
