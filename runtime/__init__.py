"""How a run executes: user errors, durable files, plug-ins, device and precision, run control, processes, checkpoints."""
