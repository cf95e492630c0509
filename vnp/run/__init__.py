"""The run: the launcher and process group, the run folder, preparation (packing, the plan), the
unit engine, the exchange between ranks and rank 0's committed progress."""
