"""``tokenway cost``: should we self-host? Traffic (ledger, bench file or flags), a model and a GPU
catalogue in, the cost of every option and the break-even volume out (docs/cost.md)."""
