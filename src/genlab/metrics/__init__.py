"""Numbers that compare with papers: importance-sampled NLL, bits/dim, FID/KID/IS."""
