from gistnet.cli import main

main()
