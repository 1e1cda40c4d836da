//! `balancer route stats`.

use balancer::{api::RouteStatsRow, route::tier::Tier};

use super::table::{Align, render};

/// Requests per route and tier, one row a route.
pub fn stats(rows: &[RouteStatsRow]) -> String {
    if rows.is_empty() {
        return "no routes (the daemon's configuration has no [[route]])\n".into();
    }
    let mut headers = vec![("route", Align::Left)];
    headers.extend(Tier::ALL.iter().map(|t| (t.label(), Align::Right)));
    headers.push(("total", Align::Right));
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let counts: Vec<u64> = Tier::ALL
                .iter()
                .map(|t| r.requests_by_tier.get(t.label()).copied().unwrap_or(0))
                .collect();
            let mut row = vec![r.route.clone()];
            row.extend(counts.iter().map(u64::to_string));
            row.push(counts.iter().sum::<u64>().to_string());
            row
        })
        .collect();
    let mut out = String::from("requests by priority tier, since the daemon started\n");
    out.push_str(&render(&headers, &body));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_aligned_row_a_route() {
        let row = |name: &str, c: u64, sh: u64| RouteStatsRow {
            route: name.into(),
            requests_by_tier: [("critical".to_string(), c), ("sheddable".to_string(), sh)].into(),
        };
        assert_eq!(
            stats(&[row("openai", 12, 3400), row("embeddings-long-name", 0, 5)]),
            "requests by priority tier, since the daemon started\n\
             route                 critical  standard  sheddable  total\n\
             openai                      12         0       3400   3412\n\
             embeddings-long-name         0         0          5      5\n"
        );
        assert!(stats(&[]).starts_with("no routes"));
    }
}
