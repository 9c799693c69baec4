"""AI agents in task pods: providers (:mod:`.providers`) and the agent loop (:mod:`.loop`)."""
