"""Tensor parallelism over MPI: one model split across processes, sockets and nodes (comm.py: the
collectives; plan.py: which slice of every matrix a rank holds)."""
from llmrt.parallel.comm import TensorParallel, TensorParallelError, connect
from llmrt.parallel.plan import ShardPlan, split_units

__all__ = ["TensorParallel", "TensorParallelError", "ShardPlan", "connect", "split_units"]
