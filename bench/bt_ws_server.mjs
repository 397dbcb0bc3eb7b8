// bt_ws_server.mjs - bittorrent-tracker with its WebSocket server on, for bench/ws_load.py.
// usage: node bt_ws_server.mjs [port] [host]; run from the bench kit's npm project
// (bench.trackers.bittorrent_tracker_dir), like the kit's bt_server.mjs.
import Server from 'bittorrent-tracker/server'

const port = Number(process.argv[2] || 8000)
const host = process.argv[3] || '127.0.0.1'
const server = new Server({ http: true, udp: false, ws: true, stats: false })
server.on('error', err => console.error('ERROR', err.message))
server.listen(port, { http: host }, () => {
  console.log(`bittorrent-tracker ws listening ${host}:${port} pid=${process.pid}`)
})
const stop = () => server.close(() => process.exit(0))
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
