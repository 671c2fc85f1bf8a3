from sorat_daemon.cli import main

raise SystemExit(main())
