//! rumqttd 0.20 as shipped, configured in code: one MQTT 3.1.1 listener on the address given as
//! the first argument, no authentication, settings from rumqttd's own demo configuration
//! (`rumqttd.toml`) except `max_connections` (raised to 20000) and
//! `next_connection_delay_ms` (0, its most favourable value).

fn main() {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:1884".to_string());
    let config = serde_json::json!({
        "id": 0,
        "router": {
            "id": 0,
            "max_connections": 20000,
            "max_outgoing_packet_count": 200,
            "max_segment_size": 104857600,
            "max_segment_count": 10
        },
        "v4": {
            "1": {
                "name": "v4-1",
                "listen": listen,
                "next_connection_delay_ms": 0,
                "connections": {
                    "connection_timeout_ms": 60000,
                    "max_payload_size": 65536,
                    "max_inflight_count": 100,
                    "dynamic_filters": true
                }
            }
        }
    });
    let config: rumqttd::Config = match serde_json::from_value(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rumqttd-host: bad configuration: {e}");
            std::process::exit(2);
        }
    };
    println!("rumqttd-host: listening on {listen}");
    let mut broker = rumqttd::Broker::new(config);
    if let Err(e) = broker.start() {
        eprintln!("rumqttd-host: {e}");
        std::process::exit(1);
    }
}
