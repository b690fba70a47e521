"""Typed results and what people read: Algorithms 1 and 2's results (paper), the sweeps'
(sweeps), the follow-up analyses' (analyses), their JSON with headline numbers (serial) and the
paper's figures (plots)."""
