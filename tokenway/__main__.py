from tokenway.cli import main

main()
