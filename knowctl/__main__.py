from knowctl.cli import main

main()
