"""What every layer may use: multi-host helpers, atomic files, progress bars, failpoints."""
