"""Code that runs in other processes: the zygote and the agent child it forks."""
