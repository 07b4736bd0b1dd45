"""The small runtime under everything else: configuration, command line, devices and precision,
distributed processes, signals, and files written atomically."""
