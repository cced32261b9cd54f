"""Learning rules and networks: primitives, rules, asymmetric layers, ResNets, training, checkpoints."""
