from meshgate.cli import main

raise SystemExit(main())
