"""`minrctl`: the command line over minr, probes and finetune."""
