"""The networks: config, Chameleon backbone, action head, VQGAN, and the streaming checkpoint reader."""
