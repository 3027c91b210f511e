-- One pgbench transaction of the demo's live load: a new order with two items,
-- a status change, and now and then a cancellation.
\set customer random(1, 5000)
\set product random(1, 500)
\set other random(1, 50000)
\set coin random(1, 10)
BEGIN;
INSERT INTO orders (customer_id, status) VALUES (:customer, 'new') RETURNING id AS order_id \gset
INSERT INTO order_items (order_id, line, product_id, quantity, unit_price)
SELECT :order_id, l, :product, l, price FROM products, generate_series(1, 2) l WHERE id = :product;
UPDATE orders SET total = (SELECT sum(quantity * unit_price) FROM order_items WHERE order_id = :order_id),
                  updated_at = now()
WHERE id = :order_id;
UPDATE orders SET status = 'shipped', updated_at = now() WHERE id = :other AND status = 'paid';
DELETE FROM orders WHERE id = :other AND :coin = 1 AND status = 'new';
COMMIT;
