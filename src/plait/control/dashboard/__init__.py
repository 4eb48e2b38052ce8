"""The dashboard's static files (index.html, app.js, style.css), served at /ui by
`plait.control.dashboard_api`; package data so they ship in the wheel (no CDN at run time)."""
