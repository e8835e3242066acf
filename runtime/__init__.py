"""How a run executes: user errors, durable files, plug-ins, devices, run control, processes, checkpoints."""
