from ollimg.cli.main import main

main()
