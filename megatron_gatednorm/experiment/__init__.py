"""The paper's comparison at small scale, end to end (``mgn experiment``): sizes, variants, the
small trainer's flags, the pipeline (data → train → convert → outliers → quant) and its results table."""
