"""How a run executes: user errors, durable files, plug-ins, devices, run control, processes, checkpoint files,
averaging, the training state and checkpoint retention."""
