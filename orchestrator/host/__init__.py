"""What the machine and the environment are: CPU facts, installed versions, processes,
signals, disk errors."""
