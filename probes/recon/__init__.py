"""Reconstruction evaluation: the paper's experiments (mask robustness, in- and out-of-domain transfer) under the
three PSNR protocols, with floors that learn nothing and paired statistics (`minrctl reconstruct`)."""
