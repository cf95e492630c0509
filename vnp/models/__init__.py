"""The three models of VirNucPro: DNABERT-S (`dnabert`), ESM2 (`esm`), the MLP (`classifier`).

Token budgets and the GPU work-unit size come from `vnp.models.memory` (2,048 tokens on the CPU;
on a GPU sized to its free memory by an activation model of each architecture)."""
