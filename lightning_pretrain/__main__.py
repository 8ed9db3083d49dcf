from lightning_pretrain.cli import main

if __name__ == "__main__":  # ddp re-executes the entry point per rank
    main()
