from genentropy_cli.cli.app import main

main()
